module toggle_counter (
  input clk,
  input reset,
  input enable,
  input toggle_in,
  output reg [7:0] count
);
  reg last;
  always @(posedge clk) begin
    if (reset) begin
      count <= 8'd0;
      last <= 1'b0;
    end else begin
      last <= toggle_in;
      if (enable && toggle_in && !last) count <= count + 8'd1;
    end
  end
endmodule
