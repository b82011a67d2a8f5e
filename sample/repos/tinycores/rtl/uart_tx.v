// tc_uart_tx: UART transmitter, 8 data bits, no parity, one stop bit (8N1).
// When idle the line is high. A one-cycle start pulse with data latches the
// byte and sends a low start bit, the eight data bits LSB first, then a high
// stop bit; each bit lasts CLKS_PER_BIT clock cycles. busy is high from the
// start pulse until the stop bit has been sent; start is ignored while busy.
module tc_uart_tx #(
    parameter CLKS_PER_BIT = 16
) (
    input            clk,
    input            rst,
    input            start,
    input      [7:0] data,
    output reg       tx,
    output           busy
);
    localparam S_IDLE  = 2'd0;
    localparam S_START = 2'd1;
    localparam S_DATA  = 2'd2;
    localparam S_STOP  = 2'd3;

    reg [1:0]  state;
    reg [15:0] clk_cnt;
    reg [2:0]  bit_idx;
    reg [7:0]  shifter;

    wire bit_done = (clk_cnt == CLKS_PER_BIT - 1);

    always @(posedge clk) begin
        if (rst) begin
            state   <= S_IDLE;
            tx      <= 1'b1;
            clk_cnt <= 0;
            bit_idx <= 0;
            shifter <= 8'h00;
        end else begin
            clk_cnt <= bit_done ? 16'd0 : clk_cnt + 1'b1;
            case (state)
                S_IDLE: begin
                    tx      <= 1'b1;
                    clk_cnt <= 0;
                    if (start) begin
                        shifter <= data;
                        state   <= S_START;
                    end
                end
                S_START: begin
                    tx <= 1'b0;
                    if (bit_done) begin
                        bit_idx <= 0;
                        state   <= S_DATA;
                    end
                end
                S_DATA: begin
                    tx <= shifter[bit_idx];
                    if (bit_done) begin
                        if (bit_idx == 3'd7)
                            state <= S_STOP;
                        bit_idx <= bit_idx + 1'b1;
                    end
                end
                S_STOP: begin
                    tx <= 1'b1;
                    if (bit_done)
                        state <= S_IDLE;
                end
            endcase
        end
    end

    assign busy = (state != S_IDLE);
endmodule
